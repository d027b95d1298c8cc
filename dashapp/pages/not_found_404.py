"""Any address that is not a page (Dash Pages routes it here by this module's name)."""

import dash

from dashapp import layouts

dash.register_page(__name__, path="/404", name="Not found", title="Not found · cnnviz")


def layout(**_query):
    return layouts.not_found("There is no page at this address.")
