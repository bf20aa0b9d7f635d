"""What a figure shows: checked without importing the project, so that a script's own figures
can be checked as it runs (helpers.CHECK_FIGURES)."""


def text_outside(fig):
    """The sides on which something drawn (a label, a title) leaves the figure: [] when nothing
    is cut off. matplotlib's tight bounding box counts only what it really draws."""
    fig.canvas.draw()
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    width, height = fig.get_size_inches()
    tolerance = 1 / fig.dpi
    sides = {"left": drawn.x0 < -tolerance, "bottom": drawn.y0 < -tolerance,
             "right": drawn.x1 > width + tolerance, "top": drawn.y1 > height + tolerance}
    return [side for side, cut in sides.items() if cut]
