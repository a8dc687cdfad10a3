"""Stage 10, report and export: the HTML report and the DCASE submission folder."""
