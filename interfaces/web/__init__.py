"""The web console: static pages and small JavaScript modules calling the JSON API."""
