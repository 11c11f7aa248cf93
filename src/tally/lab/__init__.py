"""The incident lab: real processes, real faults, an independent checker (``tally lab``).

Nothing outside ``tally.lab`` imports it (an import-linter contract). Parts:

    history   the client-side record of every operation (history.jsonl)
    checker   figures and invariants from a run's artefacts alone (independent of the engine)
