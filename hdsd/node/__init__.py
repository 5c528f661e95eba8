"""hdsd.node"""
