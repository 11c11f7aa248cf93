"""The incident lab: real processes, real faults, an independent checker (``tally lab``).

Nothing outside ``tally.lab`` imports it (an import-linter contract). Parts:

    history    the client-side record of every operation (history.jsonl)
    checker    figures and invariants from a run's artefacts alone (independent of the engine)
    rig        the processes of one run: Redis nodes, Sentinels, fault proxies, gateway, ledger
    monitor    the sampler: roles, links, sync counters, epoch keys, primary PING latency
    billing    the system under test behind one small interface: ``tally`` or ``legacy``
    workload   paced client operations over many accounts, recorded in the history
    timeline   faults and operator actions at offsets, scaled and bounded
    scenarios  incident-28 and the other named scenarios
    runner     one run end to end; report writes report.json and report.html
"""
