"""Records for audits: the shift report (counts, rates, defect classes, escapes found by review, models).

``andon.reports.shift.build(session, start, end, line_id)`` computes it from the service's records;
``andon.reports.render.write_html`` / ``write_pdf`` produce the printable document.
"""
