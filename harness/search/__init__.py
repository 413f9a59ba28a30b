"""Architecture search (issue 11, in progress): the search space so far; the study and export come next."""
