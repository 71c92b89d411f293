"""Example models shipped with eventfold; ``eventfold demo`` runs the bank account.

``eventfold.examples.bank`` is plain code to read and copy into your project;
``examples/`` of the repository builds on it (a saga, orders, IoT).
"""
