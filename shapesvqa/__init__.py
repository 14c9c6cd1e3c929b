"""shapesvqa."""
