"""Example models shipped with eventfold; ``eventfold demo`` runs the bank account.

``eventfold.examples.bank`` is the file ``examples/bank/domain.py`` of the
repository (one source): plain code to read and copy into your project.
"""
