"""hdsd.transport"""
