"""The publishers' back-office at /admin (sessions, OpenID Connect sign-in, pages): see routes."""
