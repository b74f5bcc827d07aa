"""Templates of the HTML report (:mod:`strhub.report`); a package so that they ship with the wheel."""
