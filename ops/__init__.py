"""Running the project beyond one folder: servers as child processes, a shared tracking server."""
