"""hdsd.wire"""
