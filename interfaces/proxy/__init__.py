"""The subdomain proxy and the Anthropic API proxy."""
