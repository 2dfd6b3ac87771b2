"""One module per DVC stage, each a thin ``main(argv)``: params -> I/O -> chatforge -> outputs."""
