"""`make bench`: the gateway's cost measured against the OpenAI SDK alone and LiteLLM's Router.

    python -m bench          # the full run, a few minutes on 2 cores: rewrites docs/performance.md
    python -m bench --quick  # tiny counts, to check the harness works (numbers mean nothing)

Modules:
    runner      orchestrates a run: upstream, server, clients, alternating rounds, the report
    client      one scenario's client in its own process (`python -m bench.client`), so RSS
                is attributable and no two clients share an event loop
    scenarios   the clients themselves: direct SDK, gateway Router, LiteLLM Router, gateway serve
    layers      each layer of the router's hot path, in-process (no HTTP, no SDK)
    layers_http the same layers added one at a time over HTTP, interleaved in one process
    imports     import time in fresh interpreters
    profile     a pyinstrument profile of the router's hot path (`python -m bench.profile`)
    profile_serve  `gateway serve`'s time by package, under cProfile
    report      docs/performance.md: the generated tables, keeping the hand-written analysis
    plan        how many requests each measurement makes (full and quick)
    stats       percentiles and summaries
    machine     what the run ran on

An optional `bench/shared_state.py`, when present, is run as `python -m bench.shared_state`
(with `--quick` on quick runs); whatever markdown it prints becomes a section of the report.
"""
