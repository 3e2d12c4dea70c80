"""What browsers get beside the two APIs: the OpenAPI document and its /docs page, the workbench's
routes, CORS and the request-id / JSON-error middleware."""
