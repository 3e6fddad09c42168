"""Media and results in object storage (issue #25): one small interface, a local-directory and an S3 backend."""
