"""benchmarks/unlearncanvas"""
