"""Generated datasets: nothing is ever downloaded. See :mod:`kit.data.shapes`."""
