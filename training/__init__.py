"""From labels to a public image classifier. Run `python -m training --help`."""
