"""The interactive explorer: one self-contained HTML page (theory view + measured runs), served or exported.

``report.write_report(run_dirs, out_html)`` writes it; ``server.serve(run_dirs, port=0, open_browser=True)``
serves it on 127.0.0.1.
"""
