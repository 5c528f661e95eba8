"""hdsd.client"""
