package main

import "runtime"

// goarch is the image architecture: this machine's, where the images run.
func goarch() string { return runtime.GOARCH }
