"""One router per resource: `segment` (submissions), `jobs` (records, masks, overlay), `ops` (health,
readiness, metrics). Routes are thin: they parse the request and call `app.jobs` / `app.health`."""
