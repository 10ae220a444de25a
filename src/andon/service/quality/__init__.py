"""Quality figures from the service's records, with no web code: records as columns (``records``), p-charts
and robust statistics (``stats``), what flagged a frame (``reasons``), rates per subgroup (``series``) and the
charts drawn from them (``charts``). The review station's dashboard and the shift report (``andon.reports``)
both use them, so they count the same way.
"""
