"""One module per page; Dash Pages imports them when `create_app` builds the app."""
