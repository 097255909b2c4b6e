"""The web dashboard: a static single-page app served by the API process (no build step)."""
