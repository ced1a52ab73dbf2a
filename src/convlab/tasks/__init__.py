"""Tasks: what is trained and how one step goes. The trainer runs any of them unchanged."""
