"""hdsd.pipeline"""
