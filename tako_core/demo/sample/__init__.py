"""The app `tako demo` deploys: a stdlib HTTP server and its release command (a SQLite migration).

These files are copied into the demo workspace and run on the demo servers; they are never imported.
"""
