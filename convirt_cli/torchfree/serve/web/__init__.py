"""convirt serve: the HTTP layer over the Searcher (routes, guard, auth, media, page, server)."""
