"""The UnlearnCanvas protocol, in both worlds (MiniCanvas embedded, UnlearnCanvas real).

    protocol.py     seeds, sampler defaults, the official samplers' file names
    config.py       EvalConfig: everything besides the model that decides an evaluation
    answer_set.py   the prompt grid, generated in batches, resumable, split across processes
    judges.py       classifier, CLIP, FID features and reference set, loaded from an EvalConfig
    scorers/        the judges' wrappers and the per-cell torchmetrics Metrics they feed
    scoring.py      one answer set -> accuracy table, CLIP and FID numbers, per-target rows
    metrics.py      UA, IRA, CRA, removal accuracy, summaries, efficiency (the formulas)
    evaluate.py     evaluate(pipe, EvalConfig) -> Results: the Python API
    report.py       results.json, results.md, the grid PNG
    run.py          unlearncanvas-eval, a thin command line over evaluate
    leaderboard.py  unlearncanvas-eval merge
"""
