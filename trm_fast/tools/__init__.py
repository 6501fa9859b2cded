"""The tools behind the `trm-fast` sub-commands other than train, eval and solve: bench/ (benchmarks), compare
(training-equivalence checks), convert (checkpoints of the published code), ablations, and the configuration the
command-line flags name (run_config). Each module that is a sub-command builds its own argparse sub-parser and
imports torch only inside its commands, so building the parser (`trm-fast --help`) stays cheap."""
