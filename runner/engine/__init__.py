"""The run engine: a spec in (`spec.RunSpec`), an outcome out (`outcome.RunOutcome`).

`live.py` runs a spec as live requests: one `lane.LaneRun` per model, each with a native
executor; `endpoint.py` resolves where requests go, `pricing.py` what they cost, `progress.py`,
`shutdown.py` and `observability.py` what the user sees and how a run stops, `status.py` where a
saved run stands. See ARCHITECTURE.md.
"""
