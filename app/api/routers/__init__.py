"""One router per resource: `segment` (submissions), `jobs` (records, masks, overlay), `ops` (health,
readiness, metrics). Routes are thin: they parse the request and call the services in `app.api`
(`submission`, `job_service`, `mask_stream`, `health`)."""
