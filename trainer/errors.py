"""Why ``protege train`` leaves a trained student unpublished (it exits 3 and the run's record
says ``rejected``)::

    BelowBaseline        it does not beat the zero-shot base on every test set, or it misses
     │                   the judges' publish rule
     └── BelowChampion   it does not match the adapter serving now (``--champion``) on every
                         test set, or its judged pass rates fall below the champion's

A rejection is a verdict on the student, not an error of the run: the report and ``run.json``
are written before it is raised.
"""

from __future__ import annotations


class BelowBaseline(Exception):
    """The student does not beat the naive baseline; it is not published."""


class BelowChampion(BelowBaseline):
    """The student does not match the champion it was measured against; it is not published."""
