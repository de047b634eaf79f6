"""Tools that work on the Chroma store Open WebUI shares with us."""
