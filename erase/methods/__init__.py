"""erase/methods"""
