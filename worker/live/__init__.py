"""Live segmentation: streams in, masks out while they are happening (`session`), served to the API over a
WebSocket of the worker's own (`server`)."""
