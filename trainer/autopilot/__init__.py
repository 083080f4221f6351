"""The autopilot: the closed loop as a service (``protege autopilot``).

    config     the ``autopilot`` section of the shared config file
    decide     when to retrain: a pure function of the task's facts
    facts      gathering those facts: the store, the gateway's live views, the admin API
    runners    where a run trains: a local process, or a Kubernetes Job
    service    the loop: lease, decide, run, read the outcome, hand the student to the gateway
"""
