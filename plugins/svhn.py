"""(module being written)"""
