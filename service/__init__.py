"""The HTTP layer, free of Ray: routes of both contracts, their OpenAPI description and docs page."""
