"""The lab: datasets (AVSBench layouts, synthetic scenes), training, AVSBench-exact evaluation and metrics,
model benchmarks. Uses the network (`model.modeling`) and its lifecycle (`model.config`, `model.build`,
`model.checkpoint`); the service never needs it.
"""
