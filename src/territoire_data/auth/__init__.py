"""Who may see and change what: identities, roles and the one dataset access policy."""
