"""The jobs the CLI and the Python API run: train a model into a run directory, mix runs, sweep the learning rate.

Each is one function that reads data, builds what it needs from the layers below (data, models, runs, training,
generation) and returns plain data; it prints nothing (progress goes to an `on_event` callback).
"""
