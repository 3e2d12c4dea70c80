"""The routes of the two API contracts (the metered key API and the App Check API) and the form
reading they share; each turns a request into a ``service.jobs`` plan and an answer."""
