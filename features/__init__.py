"""Feature computation: fact, analytic (behaviour, RFM) and 2-D score tags, and the Feast store."""
