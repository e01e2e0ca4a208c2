"""One module per pipeline step: plain typed functions that do the work, and one thin
KFP component wrapper per step whose body imports and calls them."""
