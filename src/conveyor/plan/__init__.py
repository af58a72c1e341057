"""`conveyor plan`: serverless functions or containers, from measured capacity and a dated price table."""
