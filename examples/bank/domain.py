"""The bank-account model, in both styles: it ships inside the package.

Read it in ``src/eventfold/examples/bank.py`` (``eventfold demo`` runs it);
this module re-exports it so that the examples here can import it by path.
"""

from eventfold.examples.bank import *  # noqa: F403
